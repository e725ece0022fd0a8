# A program to run. Copy it as config_resource_<name>.py:
#   exit_code, stdout, stderr = pmnc.transaction.<name>.execute("arg1", "arg2", stdin=b"input data",
#                                                              env={"FOO": "BAR"})
# runs /usr/local/bin/foo default_arg1 arg1 arg2 (no shell: arguments go to the program as they are)
# with b"input data" on its stdin, and NAME=VALUE and FOO=BAR added to the cage's environment.
# A non-zero exit code is not an error (the caller decides). At the request's deadline the
# program and every process it started (its process group) are killed, and the call fails.

config = dict(
    protocol="cmdexec",
    executable="/usr/local/bin/foo",  # a full path, or a name found on the cage's PATH
    arguments=("default_arg1",),  # given before each call's own arguments
    environment={"NAME": "VALUE"},  # added to the cage's environment (each call's env= on top)
    max_output=16777216,  # bytes of stdout and stderr together; more kills the program, the call fails
)

# EOF
