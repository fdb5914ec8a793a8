# A thread pool's results in order, then a chain of 30 threads started in
# reverse, each printing once its predecessor has.
import sys
import threading
from concurrent.futures import ThreadPoolExecutor


def work(n):
    return sum(i * i for i in range(n * 1000))


with ThreadPoolExecutor(max_workers=8) as ex:
    for n, r in zip(range(20), ex.map(work, range(20))):
        print(f"work({n}) = {r}")

events = [threading.Event() for _ in range(31)]
events[0].set()


def link(k):
    events[k].wait()
    print(f"link {k}", file=sys.stderr if k % 3 == 0 else sys.stdout)
    events[k + 1].set()


threads = [threading.Thread(target=link, args=(k,)) for k in reversed(range(30))]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("chain done")
