# 100 threads alive at once (issue 13: 64 pids made this fail with "can't
# start new thread"). The started threads are released even when a start
# fails, so such a failure ends the program instead of hanging it.
import threading

go = threading.Event()
results = [0] * 100


def work(k):
    go.wait()
    results[k] = k * k


threads = []
try:
    for k in range(100):
        t = threading.Thread(target=work, args=(k,))
        t.start()
        threads.append(t)
    print("threads alive at once:", threading.active_count() - 1)
finally:
    go.set()
    for t in threads:
        t.join()
print("sum of squares", sum(results))
