// AuthCheck logs in through the proxy with JDBC (pgjdbc), with the right and
// a wrong password, and prints one line per attempt: "jdbc good ok", or
// "jdbc bad error <SQLSTATE> <message>". Arguments: host port database user
// password. Run by auth_jvm_node_test.go as a single source file.
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;

public class AuthCheck {
    public static void main(String[] a) {
        String url = "jdbc:postgresql://" + a[0] + ":" + a[1] + "/" + a[2] + "?sslmode=disable";
        String[][] tries = {{"good", a[4]}, {"bad", "wrong"}};
        for (String[] t : tries) {
            try (Connection c = DriverManager.getConnection(url, a[3], t[1]);
                 Statement s = c.createStatement();
                 ResultSet r = s.executeQuery("select 6*7")) {
                r.next();
                System.out.println("jdbc " + t[0] + " " + (r.getInt(1) == 42 ? "ok" : "bad-answer"));
            } catch (SQLException e) {
                System.out.println("jdbc " + t[0] + " error " + e.getSQLState() + " " + e.getMessage());
            }
        }
    }
}
