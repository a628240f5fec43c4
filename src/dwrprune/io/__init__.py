"""What dwrprune writes and reads.

    files     atomic writes, safe ``torch.load(weights_only=True)`` reads, plain JSON data
    settings  comparing the settings a file was written with against the ones asked for
    spec      ``ModelSpec``: an architecture as data (blocks kept, channels, resolution)
    store     the SQLite store of collected samples
"""
