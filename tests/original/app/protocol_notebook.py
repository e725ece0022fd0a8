#!/usr/bin/env python3
###############################################################################
#
# A resource of this cage's own, written against the original's resource
# base class: a notebook of key/value notes in a JSON file. What a
# transaction writes reaches the file only when it commits.
#
###############################################################################

__all__ = [ "Resource" ]

###############################################################################

import json; from json import load as json_load, dump as json_dump
import os; from os import path as os_path

import pmnc.resource_pool; from pmnc.resource_pool import TransactionalResource, ResourceError

###############################################################################

class Resource(TransactionalResource): # notebook resource

    def __init__(self, name, *, path, **config):
        TransactionalResource.__init__(self, name)
        self._path = path

    def _read(self):
        if not os_path.isfile(self._path):
            return {}
        with open(self._path) as f:
            return json_load(f)

    def begin_transaction(self, xid, **kwargs):
        TransactionalResource.begin_transaction(self, xid, **kwargs)
        self._notes = self._read()

    def write(self, key, value):
        if not key:
            raise ResourceError(description = "a note needs a key", recoverable = True, terminal = False)
        self._notes[key] = value

    def read(self, key):
        return self._notes.get(key)

    def commit(self):
        temp = self._path + ".tmp"
        with open(temp, "w") as f:
            json_dump(self._notes, f)
        os.replace(temp, self._path)

    def rollback(self):
        self._notes = None

###############################################################################
# EOF
