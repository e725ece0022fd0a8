# A MongoDB resource. To use it, copy it to config_resource_<name>.py in your
# cage and call, in a transaction, xa.<name>.<collection>.insert_one({...}),
# .find({...}), .update_one(...), .aggregate([...]) and the like, or
# xa.<name>.command("ping"). Results are plain Python data (dicts, lists, ints;
# _id values stay bson.ObjectId). The original's calls work too: .insert([...]),
# .find(query, docs_to_return=n) -> .documents / .cursor_id, .get_more(cursor_id, n),
# .remove(...), .drop(), xa.<name>.kill_cursors([...]), xa.<name>.command(name, params);
# map_reduce is refused (write aggregate([...])). See pmnc/protocols/mongodb.py.
# A config file of the original's runs as it is; its username is looked up in
# "admin" unless auth_database says where (the original used `database`).

config = dict(
    protocol="mongodb",
    server_address=("127.0.0.1", 27017),
    database="test",  # the database every call works on
    username=None,  # None: no authentication; else with password, against auth_database
    password=None,
    auth_database=None,  # where username is defined; None: "admin" (the original's: database)
    connect_timeout=3.0,  # seconds, and never more than the request has left
    uri=None,  # "mongodb://user:pass@h1:27017,h2:27017/db?replicaSet=rs0" replaces server_address,
               # username and password (set those to None); its path names the database if database is None
    transactions="auto",  # "auto": session transactions where the server has them (replica set, mongos),
                          # else a last resource whose calls take effect at once; True forces them; False never
    pool__size=10,  # connections used at once (and threads); each is a MongoClient with one socket
    pool__idle_timeout=30.0,  # an unused connection is closed after this
    pool__max_age=300.0,  # any connection is closed after this
    pool__standby=0,  # connections kept open while idle
)

# EOF
