# Four threads take turns (a condition variable passes the turn), so the
# write order is fixed while the writes come from different threads, on
# both streams.
import sys
import threading

N, ROUNDS = 4, 25
turn = 0
cv = threading.Condition()


def worker(k):
    global turn
    for r in range(ROUNDS):
        with cv:
            cv.wait_for(lambda: turn % N == k)
            stream = sys.stdout if (r + k) % 2 == 0 else sys.stderr
            print(f"thread {k} round {r}", file=stream)
            turn += 1
            cv.notify_all()


threads = [threading.Thread(target=worker, args=(k,)) for k in range(N)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("all", turn, "turns done")
