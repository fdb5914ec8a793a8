# finally blocks and atexit handlers run on sys.exit, in their order.
import atexit
import sys

atexit.register(lambda: print("atexit: first registered, runs last"))
atexit.register(lambda: print("atexit: second registered, runs first", file=sys.stderr))
try:
    print("in try")
    sys.exit(0)
finally:
    print("in finally")
