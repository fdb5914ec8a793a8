# Ctrl-C with no handler: a KeyboardInterrupt traceback, death by SIGINT.
import time

print("working", flush=True)
while True:
    time.sleep(0.1)
