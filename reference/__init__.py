"""Reference LwM2M stack: object model, data formats, client, server and bootstrap server.

Layers are kept apart: ``reference.model`` (object definitions, paths, values),
``reference.formats`` (content-format codecs), ``reference.security`` (DTLS transport),
and the three roles ``reference.client``, ``reference.server``, ``reference.bootstrap``.
"""
