# Killed by its own SIGTERM.
import os
import signal
import time

print("terminating myself", flush=True)
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(5)
print("not reached")
