-- Nothing is reachable by default. Tables are written only through the SECURITY DEFINER
-- functions, and the DBA grants EXECUTE on those to application roles (see README.md).
REVOKE ALL ON ALL TABLES IN SCHEMA identity FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA identity FROM PUBLIC;
