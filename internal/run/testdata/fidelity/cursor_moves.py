# Cursor movement without curses: positions, save/restore, erase, hide.
import sys

w = sys.stdout.write
w("\033[?25l")
w("\033[2J\033[H")
w("\033[2;3H+------+")
for r in range(3, 6):
    w(f"\033[{r};3H|      |")
w("\033[6;3H+------+")
w("\0337")
w("\033[4;5Hhi")
w("\0338")
w("\033[1A\033[2K")
w("\033[8;1Hline to erase")
w("\033[8;1H\033[2Kreplaced")
w("\033[3Cafter three right\n")
w("\033[?25h")
sys.stdout.flush()
