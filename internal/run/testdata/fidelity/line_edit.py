# The terminal's line editing: erase (DEL), kill line (^U), word erase (^W).
a = input("first: ")
b = input("second: ")
c = input("third: ")
print(repr(a), repr(b), repr(c))
