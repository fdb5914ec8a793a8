# ANSI colours: 16, 256, true colour, bold and underline, reset.
RESET = "\033[0m"
for code in range(30, 38):
    print(f"\033[{code}mcolour {code}{RESET}", end=" ")
print()
for code in range(90, 98):
    print(f"\033[1;{code}mbright {code}{RESET}", end=" ")
print()
print("".join(f"\033[48;5;{i}m {RESET}" for i in range(16, 52)))
print("\033[38;2;255;128;0mtrue colour orange" + RESET)
print("\033[4munderlined\033[24m and \033[7minverse" + RESET)
print("\033[31mred without reset at the end")
