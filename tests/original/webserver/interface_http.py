#!/usr/bin/env python3
###############################################################################
#
# A static web server in the form of a Pythomnic3k cage: the requests of
# interface "http" get the pages under html/ of the cage folder. Running
# this file directly (python3 interface_http.py) runs its self-test.
#
###############################################################################

__all__ = [ "process_request" ]

###############################################################################

import os; from os import path as os_path

if __name__ == "__main__": # run by hand: the framework's lib is two folders up
    import sys
    cage_folder = os_path.dirname(os_path.abspath(sys.modules["__main__"].__file__))
    sys.path.insert(0, os_path.normpath(os_path.join(cage_folder, "..", "..", "lib")))

import typecheck; from typecheck import by_regex

###############################################################################

# one step of a page's path: a folder, or a file ending in .html
path_step = by_regex("^[A-Za-z0-9_-]+$")
page_name = by_regex("^[A-Za-z0-9_-]+\\.html$")

def _page_file(path):
    steps = path.split("/")[1:]
    if steps[-1] == "":
        steps[-1] = "index.html"
    if not page_name(steps[-1]) or not all(map(path_step, steps[:-1])):
        raise ValueError("refused URL: {0:s}".format(path))
    return os_path.join(__cage_dir__, "html", *steps)

###############################################################################

def process_request(request: dict, response: dict):

    path = request["url"].split("?", 1)[0]
    file_name = _page_file(path)

    if os_path.isfile(file_name):
        with open(file_name, encoding = "utf-8") as f:
            response["content"] = f.read()
        response["headers"]["content-type"] = "text/html"
    else:
        response["status_code"] = 404
        response["headers"]["content-type"] = "text/plain"
        response["content"] = "no such page: {0:s}".format(path)

    pmnc.log.info("{0:s} -> {1:d}".format(path, response["status_code"]))

###############################################################################

def self_test():

    import http.client
    from expected import expected
    from typecheck import InputParameterError
    from pmnc.self_test import active_interface

    assert pmnc.request.self_test == __name__

    def get(url):
        request = dict(method = "GET", url = url, headers = { "host": "127.0.0.1" }, content = b"")
        response = dict(status_code = 200, headers = { "content-type": "application/octet-stream" },
                        content = b"")
        pmnc.__getattr__(__name__).process_request(request, response)
        return response

    ###################################

    def test_pages():

        front = get("/")
        assert front["status_code"] == 200 and "Welcome" in front["content"]
        assert front["headers"]["content-type"] == "text/html"

        assert "one folder down" in get("/guide/start.html?x=1")["content"]
        assert get("/guide/")["status_code"] == 404 # a folder without its index

    test_pages()

    ###################################

    def test_missing_page():

        missing = get("/nowhere.html")
        assert missing["status_code"] == 404
        assert missing["content"] == "no such page: /nowhere.html"

    test_missing_page()

    ###################################

    def test_refused_urls():

        with expected(ValueError("refused URL: /../config_interfaces.py")):
            get("/../config_interfaces.py")

        with expected(ValueError("refused URL")):
            get("/guide/../../interface_http.py")

    test_refused_urls()

    ###################################

    def test_annotations_are_checked():

        with expected(InputParameterError("process_request() has got an incompatible value for request")):
            pmnc.__getattr__(__name__).process_request("/", {})

    test_annotations_are_checked()

    ###################################

    def test_over_http():

        config = pmnc.config_interface_http.copy()
        config.update(listener_address = ("127.0.0.1", 0))

        with active_interface("http", **config) as ifc:
            host, port = ifc.listener_address
            for url, status, text in (("/about.html", 200, b"html folder"),
                                      ("/gone.html", 404, b"no such page")):
                connection = http.client.HTTPConnection(host, port, timeout = 5.0)
                try:
                    connection.request("GET", url)
                    response = connection.getresponse()
                    assert response.status == status, response.status
                    assert text in response.read()
                finally:
                    connection.close()

    test_over_http()

    ###################################

if __name__ == "__main__": import pmnc.self_test; pmnc.self_test.run(required_dirs = ("html", ))

###############################################################################
# EOF
