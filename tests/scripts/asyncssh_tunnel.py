"""A burrow tunnel driven by asyncssh, as a script would open one.

Connects, trusting only the server host key given, logs in (an empty
password without a key: asyncssh answers burrow's prompt-less
keyboard-interactive step with it; `none` as `random`; or an ed25519 key),
asks for remote port 80 to be forwarded to a local origin, opens a session
(shell) and copies everything the server says there to stdout (the banner
with the URL, the request log). Runs until stdin closes, then disconnects.
Used by tests/clients.rs; exits non-zero with a traceback on failure.
"""

import argparse
import asyncio
import sys

import asyncssh


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


def login_options(args):
    """Keys from the command line only: never ~/.ssh or an agent."""
    if args.key:
        return {"client_keys": [args.key]}
    if args.user == "random":
        return {"client_keys": None}
    return {"client_keys": None, "password": ""}


async def copy_session_output(process):
    """The session's output (banner, request log) to stdout."""
    while True:
        data = await process.stdout.read(65536)
        if not data:
            return
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


async def stdin_closed():
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.read)


async def main():
    args = parse_args()
    trusted = asyncssh.import_known_hosts(f"[127.0.0.1]:{args.port} {args.host_key}\n")
    async with asyncssh.connect(
        "127.0.0.1",
        args.port,
        username=args.user,
        known_hosts=trusted,
        agent_path=None,
        config=None,
        connect_timeout=10,
        **login_options(args),
    ) as conn:
        await conn.forward_remote_port(args.remote_host, args.remote_port, "127.0.0.1", args.origin_port)
        process = await conn.create_process(term_type=None, encoding=None)
        output = asyncio.create_task(copy_session_output(process))
        if args.hold:
            await asyncio.Event().wait()  # until killed
        await stdin_closed()
        output.cancel()


if __name__ == "__main__":
    asyncio.run(main())
