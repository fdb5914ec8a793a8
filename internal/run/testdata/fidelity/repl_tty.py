# Loaded by python3 -i on a terminal (readline, echo by readline itself).
x = 21
print("loaded")
