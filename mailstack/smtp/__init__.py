"""SMTP in and out: the MX, submission and LMTP servers, the queue, the outbound client.

What is here, by layer:

- pure protocol rules, no I/O, each with byte-level tests: ``replies`` (named replies),
  ``params`` (MAIL/RCPT arguments and paths), ``data`` (the DATA phase: end of data,
  smuggling, dot-unstuffing, size), ``limits`` (junk command and error counts);
- the servers on aiosmtpd: ``server`` (``BaseSMTP``, the aiosmtpd subclass every service
  runs on, and its connection bookkeeping), ``mx``, ``submission``, ``lmtp`` (each a
  ``BaseSMTP`` subclass plus a policy ``Handler`` whose hooks return replies);
- what happens to an accepted message: ``mda`` (into Maildirs, in process or over LMTP),
  ``queue_runner`` (the ``queue`` service: delivery of what ``mailstack.queue`` holds),
  ``outbound`` (the SMTP client towards remote MXs). The spool and the one bounce path
  live below every protocol, in ``mailstack.queue``.

Import direction: ``serve`` and ``cli`` import this package; it imports ``delivery``,
``mail`` (pure message code: addresses, headers, DKIM/SPF/DMARC), ``queue``, ``service``,
``auth``, ``dns``, ``net``, ``maillog``, ``storage``, ``replies`` and ``config``, never
``imap``/``pop3``/``http`` (``tests/test_imports.py`` holds every module to these layers).
Inside it, the pure modules import nothing but each other and ``mail``; the servers import
them. ``smtp.replies`` adds the session's own replies to the shared ``mailstack.replies``.
"""
