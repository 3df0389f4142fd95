"""KV transports, what nodes use: the `Transport` interface (`base`) and the registry every part of disagg asks
(`registry`: nixl, tcp, none; `auto` chooses over it), the link facts auto decides on (`facts`), each
transport's package (`nixl/`, `tcp/`, `none`), and `disagg doctor` (`doctor`, `cli`). The transport
micro-benchmark lives with the other benchmarks (`bench.xfer`); nothing here imports `bench`."""
