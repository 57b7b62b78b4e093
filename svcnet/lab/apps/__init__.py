"""Built-in programs that pods run when their image is one of svcnet's.

`svcnet/echo` (echo.py) answers TCP, UDP and HTTP with its pod name and the
client's address, and SCTP through sctp.py; `svcnet/dns` runs `svcnet dns`.
"""
