# Told of a new window size by SIGWINCH.
import os
import signal
import time

got = []
signal.signal(signal.SIGWINCH, lambda s, f: got.append(tuple(os.get_terminal_size())))
print("size:", tuple(os.get_terminal_size()))
print("ready", flush=True)
while not got:
    time.sleep(0.01)
print("resized to:", got[0])
