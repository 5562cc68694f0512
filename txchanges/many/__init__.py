"""
Follow many databases of one server: discovery through ``_db_updates``, a
bounded number of feeds open at once, and one checkpoint per database.
"""
