# What a program can learn about its terminal (or that it has none).
import os
import shutil
import sys

print("isatty:", sys.stdin.isatty(), sys.stdout.isatty(), sys.stderr.isatty())
print("TERM:", os.environ.get("TERM"))
print("shutil size:", tuple(shutil.get_terminal_size()))
try:
    print("os size:", tuple(os.get_terminal_size()))
except OSError as e:
    print("os size: OSError", e.strerror)
try:
    import termios

    attrs = termios.tcgetattr(0)
    print("echo:", bool(attrs[3] & termios.ECHO), "icanon:", bool(attrs[3] & termios.ICANON))
except termios.error as e:
    print("termios:", e.args[1])
