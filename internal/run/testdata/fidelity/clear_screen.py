# os.system("clear") between two screens, and the ANSI way.
import os

print("first screen")
os.system("clear")
print("second screen")
print("\033[H\033[2J", end="")
print("third screen")
