# Works until Ctrl-C, then says goodbye and exits 0.
import time

print("Counting... press Ctrl-C to stop", flush=True)
n = 0
try:
    print("ready", flush=True)
    while True:
        n += 1
        time.sleep(0.01)
except KeyboardInterrupt:
    print("Goodbye!")
