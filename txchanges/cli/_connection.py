"""
How the command and the plugin connect to the server: ``--cacert``,
``--cert`` and ``--key`` for TLS, ``--proxy`` (or the environment's
``HTTPS_PROXY``, ``HTTP_PROXY`` and ``NO_PROXY``) for a proxy. Files and
URLs are checked while the options are parsed, so a bad one is a usage
error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from twisted.python import usage

from txchanges.http._proxy import parse_proxy_url, proxy_from_environment
from txchanges.http._tls import TLSPolicy

__all__ = ["ConnectionOptions"]


class ConnectionOptions(usage.Options):
    """
    The connection's options; :meth:`server_options` gives the keyword
    arguments of :class:`~txchanges.Server` they stand for. A subclass
    calls :meth:`check_connection` from its ``postOptions``.
    """

    optParameters: list[list[Any]] = [
        ["cacert", None, None,
         "A PEM file of the certificate authorities to trust for https, instead of the system's "
         "trust store."],
        ["cert", None, None,
         "A PEM file with the client certificate to show an https server that asks for one "
         "(with its key, unless --key)."],
        ["key", None, None, "The PEM file of --cert's private key (unencrypted)."],
        ["proxy", None, None,
         "An HTTP proxy, http://[user:password@]host:port (CONNECT for https); by default "
         "HTTPS_PROXY or HTTP_PROXY from the environment, unless NO_PROXY names the host."],
    ]

    def check_connection(self) -> None:
        """
        :raises usage.UsageError: for a TLS file that cannot be used, or a
            bad ``--proxy``.
        """
        try:
            self["tls-policy"] = TLSPolicy(self["cacert"], self["cert"], self["key"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        if self["proxy"] is not None:
            try:
                parse_proxy_url(self["proxy"])
            except ValueError as e:
                raise usage.UsageError(f"--proxy: {e}") from None

    def server_options(self, url: str, environ: Mapping[str, str]) -> dict[str, Any]:
        """
        :param url: The server's URL.
        :param environ: The environment, for the proxy.
        :return: ``tls_policy`` and ``proxy`` for :class:`~txchanges.Server`.
        :raises usage.UsageError: when the environment's proxy is not a
            proxy URL.
        """
        proxy: Optional[str] = self["proxy"]
        if proxy is None:
            proxy = proxy_from_environment(url, environ)
            if proxy is not None:
                try:
                    parse_proxy_url(proxy)
                except ValueError as e:
                    raise usage.UsageError(f"the proxy of the environment (HTTPS_PROXY, HTTP_PROXY): {e}") from None
        return {"tls_policy": self.get("tls-policy"), "proxy": proxy}
