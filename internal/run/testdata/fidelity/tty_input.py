# input() on a terminal: the typed text is echoed by the terminal.
name = input("Name: ")
age = int(input("Age: "))
print(f"Hello {name}, next year you will be {age + 1}.")
