"""The router: public OpenAI API in front of prefill and decode nodes. Pure HTTP: never imports torch or vllm."""
