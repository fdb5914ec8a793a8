# Loaded by python3 -i: the REPL session then uses what it defines.
def greet(name):
    return f"Hello, {name}!"


items = [3, 1, 2]
print("loaded")
