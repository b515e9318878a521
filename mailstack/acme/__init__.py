"""ACME certificates (RFC 8555) through the ``acme`` library (certbot's; ``josepy`` under it).

- ``store``: the files: account key, challenge answers (shared by ``serve`` and the CLI),
  the installed certificate pair; every key 0600, every write atomic;
- ``client``: one order for the names given, http-01 answered through the challenge
  store, tls-alpn-01 (RFC 8737) through ``alpn``'s;
- ``alpn``: the tls-alpn-01 challenge certificates and the https listener's answer;
- ``renewal``: one certificate per host name: when it is due (a third of its lifetime
  left), the per-host backoff after a failure, without I/O; ``renew`` ties them
  together under a lock;
- ``status``: what ``mailstack cert status`` prints.
"""
