# Its own SIGINT handler: three Ctrl-Cs, then exit 3.
import signal
import sys
import time

count = 0


def handler(signum, frame):
    global count
    count += 1
    print(f"caught SIGINT #{count}", flush=True)


signal.signal(signal.SIGINT, handler)
print("ready", flush=True)
while count < 3:
    time.sleep(0.01)
print("three interrupts, exiting", file=sys.stderr)
sys.exit(3)
