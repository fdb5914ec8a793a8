# Fills the terminal's width, as a program that reads its size does.
import shutil

cols, rows = shutil.get_terminal_size()
print(f"{cols}x{rows}")
print("=" * cols, end="")
print("".join(str(i % 10) for i in range(cols)), end="")
print("bottom line")
