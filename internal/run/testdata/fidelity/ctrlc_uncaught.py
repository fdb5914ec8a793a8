# Ctrl-C that the program does not handle: a KeyboardInterrupt traceback,
# and death by SIGINT. It is raised again in one place so that the
# traceback does not depend on the line the signal happened to land on.
import time

try:
    print("working", flush=True)
    while True:
        time.sleep(0.1)
except KeyboardInterrupt:
    raise KeyboardInterrupt from None
