"""The agent's own HTTP/1.1 on asyncio streams, instead of aiohttp's (issue 15: aiohttp cost
about 9.5 MB of every agent's resident memory): `agent.http.client` for the etcd, Kubernetes
and peer clients, `agent.http.server` for the REST API. Neither imports the other; this
package's `__init__` imports nothing.
"""
