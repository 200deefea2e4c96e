"""Request handling shared by the router and the clients: API schemas, request checks,
images, vector encodings, the answer cache, the fallback chain and API keys."""
