"""peewee-migrate's settings for this folder, read by ``pw_migrate`` (not a migration).

``pw_migrate create --auto`` takes every ``peewee.Model`` subclass it finds in
the scanned module for a table, and peewee has no abstract models: without this
it would write a migration creating a table for ``marketstore.models.BaseModel``.
``IGNORE`` lists ``Model._meta.name`` values (the lower-cased class name) that
it skips. Nothing else is set here: ``--database`` stays the caller's.
"""
IGNORE = ["basemodel"]
