# Ctrl-C at an input prompt.
try:
    name = input("Your name: ")
except KeyboardInterrupt:
    print("\nCancelled.")
    raise SystemExit(130)
print("Hello,", name)
