"""Per prompt length, medians over the router log's disaggregated requests (ms): prefill_s, ttft_s - prefill_s
(the router's time from the prefill answer to the first token leaving), decode_ttft_s (the decode call to
its first chunk: pull + one step), decode_first_s - ttft_s (first to second token at the router).

    python router_log_breakdown.py LOG_DIR     # LOG_DIR/{tcp,nixl}/router.log, as bench compare --log-dir writes
"""
import json,sys,statistics as st,collections
for t in ("tcp","nixl"):
    rows=collections.defaultdict(list)
    for line in open(f"{sys.argv[1]}/{t}/router.log"):
        if '"ttft_s"' not in line or '"mode":"disagg"' not in line: continue
        d=json.loads(line.split("request ",1)[1])
        if d.get("ttft_s") is None or d.get("decode_first_s") is None: continue
        rows[d["prompt_tokens"]].append(d)
    print(t)
    for n in sorted(rows):
        r=rows[n]
        f=lambda k: st.median(k(x) for x in r)*1000
        print(f"  {n:5d} n={len(r)} prefill {f(lambda x:x['prefill_s']):8.1f}  ttft-prefill {f(lambda x:x['ttft_s']-x['prefill_s']):6.1f}  decode_ttft {f(lambda x:x['decode_ttft_s']):7.1f}  first->second {f(lambda x:x['decode_first_s']-x['ttft_s']):7.1f} kvMB {r[0]['kv_bytes']/1e6:.1f}")
