"""Loaded by every Python process of the network test (it is on their PYTHONPATH): an audit hook
(`sys.addaudithook`, no LD_PRELOAD) that appends each name lookup and connect attempt to the file
named by ``STUDIO_NET_AUDIT``. strace sees the same from outside, including C libraries' own
sockets; this adds the host *names* a process asked for."""

import json
import os
import sys

_PATH = os.environ.get("STUDIO_NET_AUDIT")

if _PATH:
    def _hook(event, args):
        if event not in ("socket.getaddrinfo", "socket.connect", "socket.sendto",
                         "socket.gethostbyname", "socket.gethostbyaddr"):
            return
        try:
            if event == "socket.getaddrinfo":
                what = [str(args[0]), str(args[1])]
            elif event in ("socket.connect", "socket.sendto"):
                addr = args[1]
                what = [str(a) for a in addr] if isinstance(addr, tuple) else [str(addr)]
            else:
                what = [str(args[0])]
            with open(_PATH, "a") as f:
                f.write(json.dumps({"pid": os.getpid(), "event": event, "what": what}) + "\n")
        except Exception:
            pass

    sys.addaudithook(_hook)
