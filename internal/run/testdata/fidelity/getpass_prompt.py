# getpass reads from the terminal without echo; input() echoes again after.
import getpass

pw = getpass.getpass("Password: ")
print("length", len(pw), "reversed", pw[::-1])
again = input("Visible: ")
print("you typed", repr(again))
