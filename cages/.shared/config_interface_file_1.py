# A file interface: the files other systems drop into a folder become requests. To use it, copy
# it to config_interface_<name>.py in your cage, copy interface_file_1.py to interface_<name>.py,
# and add <name> to `interfaces` in config_interfaces.py. A file is deleted (or moved to
# done_directory) only after its handler succeeded; one that keeps failing is set aside.

config = dict(
    protocol="file",
    source_directory="/tmp/spool",  # the folder polled (a relative one is the cage folder's)
    filename_regex=r"[A-Za-z0-9_]+\.msg",  # the names taken: the whole name must match
    interval=10.0,  # seconds between passes; a pass that took files is followed by another at once
    settle_time=1.0,  # seconds a file must stay unchanged (size, modification time) before it is taken
    done_directory=None,  # where handled files are moved (None: they are deleted)
    failed_directory=None,  # where files whose handler failed max_failures times go (None: <cage>/file_failed/<name>)
    max_failures=5,  # handler runs that fail before the file is set aside; counts survive a restart
    concurrency=1,  # files handled at once (1: one by one, in name order)
)

# EOF
