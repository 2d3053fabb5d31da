"""Hot-path cost of the metrics counters in the Cython fan-out (frames_sent, flushes).

`PYTHONPATH=<checkout> python -m bench.fanout_counters <label>` times `Fanout.deliver` of a
frame to 10 000 connections (10 frames per connection per turn, then `flush`) with no
sockets (a connection without a transport is skipped at its write), so what is measured is
the per-frame bookkeeping the counters add to. Run it against two checkouts to compare.
"""
import asyncio, time, statistics, sys
import uniws._fastpath as fp
loop = asyncio.new_event_loop()
fan = fp.Fanout(loop, 1 << 30, lambda: None)
conns = {}
for i in range(10000):
    c = fp.Conn()
    c.state = fp.CONNECTED
    conns[c] = None
frame = fp.frame_text(b'{"channel":"bench","data":{"data":{"t":1,"s":2,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}}')
def run(n=20):
    t = time.perf_counter()
    for _ in range(n):
        for _ in range(10):
            fan.deliver(conns, frame)     # 10 frames per client per turn, coalesced
        fan.flush()
    return (time.perf_counter() - t) / (n * 10 * len(conns)) * 1e9
for _ in range(3): run()
samples = [run() for _ in range(15)]
print(f"{sys.argv[1]}: ns per frame median {statistics.median(samples):.2f} min {min(samples):.2f}")
