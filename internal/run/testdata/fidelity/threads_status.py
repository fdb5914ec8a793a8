# Threads take turns redrawing one status line with \r.
import sys
import threading

N = 3
turn = 0
cv = threading.Condition()


def worker(k):
    global turn
    for step in range(5):
        with cv:
            cv.wait_for(lambda: turn % N == k)
            sys.stdout.write(f"\rworker {k} step {step}   ")
            sys.stdout.flush()
            turn += 1
            cv.notify_all()


threads = [threading.Thread(target=worker, args=(k,)) for k in range(N)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("\nall workers done")
