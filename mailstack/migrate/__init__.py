"""Carrying users and mail over from another server (`mailstack import ...`).

- `passwdfile`: Dovecot passwd-file lines -> users with their hashes and quotas (pure parsing).
- `wire`: the bits of IMAP a client reads (LIST and FETCH data, INTERNALDATE), without I/O.
- `source`: a connection to the old IMAP server (aioimaplib), with STARTTLS and SASL PLAIN.
- `state`: which source messages were already copied, per folder (resumable, idempotent runs).
- `imapcopy`: the copy itself, folder by folder in batches, into `mailstack.storage`.

Messages reach the Maildir only through `mailstack.storage` (`Folder.append` with flags,
keywords and INTERNALDATE), never around it. The CLI (`mailstack.cli.importing`) wires
these to the directory and prints what happened.
"""
