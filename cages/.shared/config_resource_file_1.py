# A file resource: files written into a folder when the transaction commits, and read.
#
#   path = pmnc.transaction.file_1.write("out/a0001.msg", b"data")   # subfolders are made
#   xa = pmnc.transaction.create(); xa.file_1.write("a.msg", b"x", overwrite=False); xa.db.execute(...)
#   data = pmnc.transaction.file_1.read("in/b.msg", remove=True)     # removed at commit
#
# A write goes to a temp file (fsynced, with file_permissions) renamed into place at commit and
# removed at rollback. Names are relative to target_directory and may not leave it.

config = dict(
    protocol="file",
    target_directory="/tmp/out",  # the folder files are written to and read from (best an absolute path)
    temp_directory=None,  # where temp files are written (None: beside the target); on the same file system
    temp_extension="tmp",  # the temp files' extension
    file_permissions="rw-rw----",  # the written files' permissions, as ls shows them
)

# EOF
