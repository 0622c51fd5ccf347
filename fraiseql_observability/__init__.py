"""fraiseql_observability"""
