# Single keys in raw mode, as games read them: no echo, no line editing.
import sys
import termios
import tty

fd = sys.stdin.fileno()
old = termios.tcgetattr(fd)
try:
    tty.setraw(fd)
    sys.stdout.write("press keys, q quits\r\n")
    sys.stdout.flush()
    while True:
        ch = sys.stdin.read(1)
        if ch == "q":
            break
        if ch == "\x1b":
            ch += sys.stdin.read(2)
        sys.stdout.write(f"key {ch!r}\r\n")
        sys.stdout.flush()
finally:
    termios.tcsetattr(fd, termios.TCSADRAIN, old)
print("bye")
