"""A lean HTTP/1.1 path for the KMS API's hot routes, in front of aiohttp (see site.py)."""
