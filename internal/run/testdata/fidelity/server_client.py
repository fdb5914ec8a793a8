# A TCP server and its client in one program, on 127.0.0.1.
import socket
import threading

srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0))
srv.listen(1)
port = srv.getsockname()[1]


def serve():
    conn, _ = srv.accept()
    with conn:
        f = conn.makefile("rwb")
        for line in f:
            msg = line.decode().strip()
            print(f"server got: {msg}", flush=True)
            f.write(f"echo {msg.upper()}\n".encode())
            f.flush()
            if msg == "bye":
                break


t = threading.Thread(target=serve)
t.start()
c = socket.create_connection(("127.0.0.1", port))
cf = c.makefile("rwb")
for msg in ["hello", "ça va", "bye"]:
    cf.write((msg + "\n").encode())
    cf.flush()
    print("client got:", cf.readline().decode().strip(), flush=True)
t.join()
cf.close()
c.close()
srv.close()
print("server and client done")
