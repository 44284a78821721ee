"""mta: a production mail transfer agent (SMTP server and relay).

The import package and the command are ``mta``; the distribution on the package index is
``mta-relay`` (``mta`` there is an unrelated project): ask ``importlib.metadata`` for
:data:`DISTRIBUTION`.
"""

__version__ = "0.1.0"
DISTRIBUTION = "mta-relay"
