"""ACME certificates (RFC 8555) through the ``acme`` library (certbot's; ``josepy`` under it).

- ``store``: the files: account key, challenge answers (shared by ``serve`` and the CLI),
  the installed certificate pair; every key 0600, every write atomic;
- ``client``: one order for all names, http-01 answered through the challenge store;
- ``renewal``: when a certificate is due (a third of its lifetime left) and the backoff
  after a failure, without I/O; ``renew`` ties them together under a lock;
- ``status``: what ``mailstack cert status`` prints.
"""
