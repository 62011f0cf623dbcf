"""A burrow tunnel driven by paramiko, as a script would open one.

Connects, checks the server's host key against the one given, logs in
(keyboard-interactive without a key, `none` as `random`, or an ed25519
key), asks for remote port 80 to be forwarded to a local origin, opens a
session (shell) and copies everything the server says there to stdout
(the banner with the URL, the request log). Runs until stdin closes, then
disconnects. Used by tests/clients.rs; exits non-zero with a line on stderr
when any step fails.
"""

import argparse
import socket
import sys
import threading

import paramiko


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True, help="burrow's SSH port on 127.0.0.1")
    p.add_argument("--host-key", required=True, help="the server's public key line (type base64)")
    p.add_argument("--user", default="test")
    p.add_argument("--key", help="an OpenSSH ed25519 private key; none: log in keyless")
    p.add_argument("--origin-port", type=int, required=True, help="where forwarded connections go")
    # benches/compare.sh: the same client against OpenSSH's sshd (a plain
    # remote forward on a free port), and run until killed.
    p.add_argument("--remote-host", default="", help="the forward's bind address (default: burrow's \"\")")
    p.add_argument("--remote-port", type=int, default=80, help="the forward's port (default 80)")
    p.add_argument("--hold", action="store_true", help="run until killed, not until stdin closes")
    return p.parse_args()


def check_host_key(transport, expected):
    """Refuses a server whose host key is not the one the caller knows."""
    key = transport.get_remote_server_key()
    kind, b64 = expected.split()[:2]
    if key.get_name() != kind or key.get_base64() != b64:
        sys.exit(f"paramiko: unexpected host key {key.get_name()} {key.get_base64()}")


def log_in(transport, user, key_path):
    if key_path:
        transport.auth_publickey(user, paramiko.Ed25519Key.from_private_key_file(key_path))
    elif user == "random":
        transport.auth_none(user)
    else:
        # burrow asks no questions: answer every prompt (there are none) empty.
        transport.auth_interactive(user, lambda title, instructions, prompts: ["" for _ in prompts])
    if not transport.is_authenticated():
        sys.exit("paramiko: not authenticated")


def pump(src_recv, dst_send, done):
    """Copies bytes one way until EOF, then signals the end of that direction."""
    try:
        while True:
            data = src_recv(65536)
            if not data:
                break
            dst_send(data)
    except (OSError, EOFError):
        pass
    finally:
        try:
            done()
        except (OSError, EOFError):
            pass  # the other side is gone already


def serve_forwarded(channel, origin_port):
    """One forwarded connection: relayed to the origin in both directions."""
    try:
        origin = socket.create_connection(("127.0.0.1", origin_port), timeout=10)
    except OSError:
        channel.close()
        return
    origin.settimeout(None)
    to_origin = threading.Thread(
        target=pump, args=(channel.recv, origin.sendall, lambda: origin.shutdown(socket.SHUT_WR)), daemon=True
    )
    to_origin.start()
    pump(origin.recv, channel.sendall, channel.shutdown_write)
    to_origin.join()
    origin.close()
    channel.close()


def copy_session_output(session):
    """The session channel's output (banner, request log) to stdout."""
    while True:
        data = session.recv(65536)
        if not data:
            return
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


def main():
    args = parse_args()
    transport = paramiko.Transport(("127.0.0.1", args.port))
    transport.start_client(timeout=10)
    check_host_key(transport, args.host_key)
    log_in(transport, args.user, args.key)

    def on_forwarded(channel, _origin, _server):
        threading.Thread(target=serve_forwarded, args=(channel, args.origin_port), daemon=True).start()

    transport.request_port_forward(args.remote_host, args.remote_port, handler=on_forwarded)
    session = transport.open_session(timeout=10)
    session.invoke_shell()
    threading.Thread(target=copy_session_output, args=(session,), daemon=True).start()
    if args.hold:
        threading.Event().wait()  # until killed
    sys.stdin.read()  # until stdin closes
    transport.close()


if __name__ == "__main__":
    main()
