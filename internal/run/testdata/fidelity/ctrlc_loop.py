# Works silently until Ctrl-C (so the terminal's ^C echo has one place).
import time

try:
    print("working, press Ctrl-C", flush=True)
    while True:
        time.sleep(0.01)
except KeyboardInterrupt:
    print("Goodbye!")
